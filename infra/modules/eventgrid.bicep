// (deployEventGrid) A custom Event Grid topic for the control plane's CloudEvents 1.0
// (RapidsHpo.ExperimentStatusChanged, RapidsHpo.TrialFinished, RapidsHpo.BestTrialImproved).
// Local (access-key) auth is off: only identities holding "EventGrid Data Sender" on the topic publish
// (the Function App gets it in roles-eventgrid.bicep); subscribers are added per consumer (README).

@description('Azure region.')
param location string

@description('Event Grid topic name.')
param name string

@description('Tags applied to every resource.')
param tags object = {}

resource topic 'Microsoft.EventGrid/topics@2025-02-15' = {
  name: name
  location: location
  tags: tags
  properties: {
    inputSchema: 'CloudEventSchemaV1_0'
    disableLocalAuth: true
    minimumTlsVersionAllowed: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

output name string = topic.name
output id string = topic.id
@description('EVENTGRID_TOPIC_ENDPOINT: where the control plane posts its events.')
output endpoint string = topic.properties.endpoint
