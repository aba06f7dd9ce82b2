// What an operator opens in Azure Monitor: a workbook charting experiments from the app's OpenTelemetry
// (shared/telemetry: metric names in shared/telemetry/metrics.py, step spans as `requests` named 'step <event>')
// and a log alert on experiments stuck or failing. Both read the Application Insights component the app
// exports to; customMetrics keep each metric's attributes in customDimensions.

@description('Azure region.')
param location string

@description('Resource id of the Application Insights component the app exports to.')
param appInsightsId string

@description('Name prefix of the workbook and the alert.')
param namePrefix string

@description('Minutes without a step after which a running experiment counts as stuck (above the poll interval and the sweep).')
@minValue(10)
param stuckMinutes int = 30

@description('Action group the alert notifies (resource id); empty: the alert fires in the portal only.')
param actionGroupId string = ''

@description('Tags applied to every resource.')
param tags object = {}

var terminal = '"COMPLETED", "FAILED", "CANCELLED"'
var dims = 'customDimensions'
// The last status each experiment's steps reported; stuck: not final and no step for stuckMinutes.
var stuckQuery = 'requests | where name startswith "step " | extend experiment = tostring(${dims}["rapids_hpo.experiment.id"]), status = coalesce(tostring(${dims}["rapids_hpo.status.to"]), tostring(${dims}["rapids_hpo.status"])) | where isnotempty(experiment) and isnotempty(status) | summarize arg_max(timestamp, status, operation_Id) by experiment | where status !in (${terminal}) and timestamp < ago(${stuckMinutes}m) | project experiment, why = strcat("stuck in ", status, " since ", format_datetime(timestamp, "yyyy-MM-dd HH:mm")), trace = operation_Id'
// Experiments that ended FAILED within the window given ({0}).
var failedQuery = 'requests | where timestamp > ago({0}) and name startswith "step " and tostring(${dims}["rapids_hpo.status.to"]) == "FAILED" | project experiment = tostring(${dims}["rapids_hpo.experiment.id"]), why = "failed", trace = operation_Id'
var alertQuery = 'union (${stuckQuery}), (${format(failedQuery, '15m')})'

var metric = 'customMetrics | where name == "{0}" | extend status = tostring(${dims}["rapids_hpo.status"]), backend = tostring(${dims}["rapids_hpo.backend"]), step = tostring(${dims}["rapids_hpo.step"]), state = tostring(${dims}["rapids_hpo.trial.state"]), experiment = tostring(${dims}["rapids_hpo.experiment.id"]), kind = tostring(${dims}["kind"])'
var charts = [
  {
    title: 'Experiments submitted, by backend'
    query: '${format(metric, 'rapids_hpo.experiments.submitted')} | summarize submitted = sum(valueSum) by bin(timestamp, 1h), backend'
    visualization: 'barchart'
  }
  {
    title: 'Experiments ended, by status and backend'
    query: '${format(metric, 'rapids_hpo.experiments.ended')} | summarize ended = sum(valueSum) by bin(timestamp, 1h), series = strcat(status, " / ", backend)'
    visualization: 'barchart'
  }
  {
    title: 'Step latency (p50, p95 s), by step'
    query: 'requests | where name startswith "step " | summarize p50 = percentile(duration, 50) / 1000, p95 = percentile(duration, 95) / 1000 by bin(timestamp, 15m), name'
    visualization: 'timechart'
  }
  {
    title: 'Steps by outcome (count, mean s)'
    query: '${format(metric, 'rapids_hpo.step.duration')} | extend outcome = tostring(${dims}["rapids_hpo.outcome"]) | summarize steps = sum(valueCount), mean = sum(valueSum) / sum(valueCount) by step, outcome'
    visualization: 'table'
  }
  {
    title: 'Queue lag at dequeue (mean and max s), by step'
    query: '${format(metric, 'rapids_hpo.queue.lag')} | summarize mean = sum(valueSum) / sum(valueCount), worst = max(valueMax) by bin(timestamp, 15m), step'
    visualization: 'timechart'
  }
  {
    title: 'Trials finished per minute, by outcome'
    query: '${format(metric, 'rapids_hpo.trials.finished')} | summarize trials = sum(valueSum) by bin(timestamp, 1m), state'
    visualization: 'areachart'
  }
  {
    title: 'Spend and budget (USD), by experiment'
    query: 'customMetrics | where name in ("rapids_hpo.experiment.spend", "rapids_hpo.experiment.budget") | extend experiment = tostring(${dims}["rapids_hpo.experiment.id"]) | summarize arg_max(timestamp, value) by experiment, name | evaluate pivot(name, any(value)) | order by experiment desc'
    visualization: 'table'
  }
  {
    title: 'CloudEvents staged, sent, failed'
    query: 'customMetrics | where name startswith "rapids_hpo.events." | summarize events = sum(valueSum) by bin(timestamp, 15m), series = strcat(name, " ", tostring(${dims}["kind"]))'
    visualization: 'timechart'
  }
  {
    title: 'Experiments stuck or failing (the alert\'s query; trace: the end-to-end transaction id)'
    query: 'union (${stuckQuery}), (${format(failedQuery, '1d')})'
    visualization: 'table'
  }
]
var workbookContent = {
  version: 'Notebook/1.0'
  items: concat(
    [
      {
        type: 1
        content: {
          json: '## rapids-hpo experiments\nFrom the control plane\'s and the drivers\' OpenTelemetry. One trace per experiment: open a trace id (the dashboard shows it) in the end-to-end transaction view.'
        }
        name: 'intro'
      }
    ],
    map(charts, chart => {
      type: 3
      content: {
        version: 'KqlItem/1.0'
        query: chart.query
        size: 0
        title: chart.title
        timeContext: { durationMs: 86400000 }
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: chart.visualization
      }
      name: chart.title
    })
  )
  fallbackResourceIds: [appInsightsId]
}

resource experimentsWorkbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(appInsightsId, 'rapids-hpo-experiments')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: '${namePrefix} experiments'
    category: 'workbook'
    sourceId: appInsightsId
    serializedData: string(workbookContent)
  }
}

resource stuckOrFailing 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-experiments-stuck-or-failing'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'rapids-hpo: experiments stuck or failing'
    description: 'An experiment with no state-machine step for ${stuckMinutes} minutes while not final, or one that ended FAILED in the last 15 minutes (dimension: experiment; the trace id is in the results).'
    severity: 2
    enabled: true
    scopes: [appInsightsId]
    evaluationFrequency: 'PT15M'
    windowSize: 'P1D'
    criteria: {
      allOf: [
        {
          query: alertQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'experiment'
              operator: 'Include'
              values: ['*']
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: empty(actionGroupId) ? [] : [actionGroupId]
    }
  }
}

output workbookId string = experimentsWorkbook.id
output alertId string = stuckOrFailing.id
