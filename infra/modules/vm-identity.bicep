// The user-assigned managed identity of the Dask VMs (vmcluster backend). It holds NO data-plane role on
// the control plane: the HPO driver on the VMs reaches its own experiment's data only, with a SAS the
// control plane mints per experiment (shared/store/compute.py: a user-delegation SAS on that experiment's
// compute container, read/add/create/write/list, expiring with the experiment), and the control plane
// ingests the trials and artifacts into its tables. Code on one experiment's VMs can therefore change
// neither another experiment nor any table, queue or secret. Grant this identity a reader role on your own
// data account if specs read abfss:// data with it.
//
// Deployed in the control-plane resource group: the identity outlives experiment clean-ups, and an identity
// can be attached to VMs in any resource group of the tenant by a caller holding Managed Identity Operator
// on it (the Function App gets that role, scoped to this identity only, in roles-controlplane.bicep).
//
// One role, on the Application Insights component only: Monitoring Metrics Publisher, so the head's driver
// exports its spans with this identity (shared/telemetry/compute.py: Authorization=AAD;ClientId=<its client
// id>), the component refusing its instrumentation key (DisableLocalAuth).

import { roleIds } from 'role-definitions.bicep'

@description('Azure region.')
param location string

@description('Name of the user-assigned managed identity.')
param name string

@description('Tags applied to every resource.')
param tags object = {}

@description('Application Insights component name (in this resource group): the driver exports to it.')
param appInsightsName string

resource vmIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' = {
  name: name
  location: location
  tags: tags
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, vmIdentity.id, roleIds.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
    principalId: vmIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    description: 'The vmcluster driver\'s telemetry to Application Insights with Entra ID authentication.'
  }
}

output name string = vmIdentity.name
@description('ARM resource id: RAPIDS_HPO_VM_IDENTITY_ID, attached to every Dask VM.')
output id string = vmIdentity.id
@description('Client id (not a secret): RAPIDS_HPO_VM_IDENTITY_CLIENT_ID, AZURE_CLIENT_ID on the VMs.')
output clientId string = vmIdentity.properties.clientId
output principalId string = vmIdentity.properties.principalId
