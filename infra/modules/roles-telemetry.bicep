// The AzureML clusters' identity exports the trials' telemetry (gpu_jobs/telemetry.py, with
// APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD;ClientId=<its client id>, set on each sweep job by
// shared/telemetry/compute.py) to the control plane's Application Insights component, which refuses its
// instrumentation key (DisableLocalAuth, monitoring.bicep): Monitoring Metrics Publisher on the component
// only. The identity lives in the experiment resource group (azureml.bicep), the component here, and a role
// assignment is deployed where its scope is: hence this module, deployed to the control-plane group.

import { roleIds } from 'role-definitions.bicep'

@description('Application Insights component name (in this resource group).')
param appInsightsName string

@description('Name of the AzureML clusters\' user-assigned identity (azureml.bicep).')
param computeIdentityName string

@description('The resource group that identity lives in (the experiment resource group).')
param computeIdentityResourceGroup string

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource computeIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' existing = {
  name: computeIdentityName
  scope: resourceGroup(computeIdentityResourceGroup)
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, computeIdentity.id, roleIds.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
    principalId: computeIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    description: 'The AzureML trials\' telemetry to Application Insights with Entra ID authentication.'
  }
}
