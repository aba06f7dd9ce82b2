// Role assignments for the Function App's system-assigned identity on the control-plane resources,
// each at the narrowest scope that works.

import { roleIds } from 'role-definitions.bicep'

@description('Object (principal) ID of the Function App system-assigned identity.')
param principalId string

@description('Control-plane storage account name.')
param storageAccountName string

@description('Application Insights component name.')
param appInsightsName string

@description('Control-plane virtual network name.')
param vnetName string

@description('Name of the Dask VM subnet in that network.')
param daskSubnetName string

@description('Name of the user-assigned managed identity of the Dask VMs (in this resource group).')
param vmIdentityName string

resource storage 'Microsoft.Storage/storageAccounts@2026-09-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource vnet 'Microsoft.Network/virtualNetworks@2026-03-01' existing = {
  name: vnetName
}

resource daskSubnet 'Microsoft.Network/virtualNetworks/subnets@2026-03-01' existing = {
  parent: vnet
  name: daskSubnetName
}

resource vmIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' existing = {
  name: vmIdentityName
}

// Host storage needs Blob Data Owner (the minimum the Functions host needs for its blobs, leases and
// keys); it also covers the Flex deployment container and the artifacts container.
resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Functions host storage, Flex deployment package, experiment artifacts.'
  }
}

// Queue triggers read and delete messages and write <queue>-poison; the code sends to every queue.
resource queueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageQueueDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Queue triggers, poison queues and the experiment queues.'
  }
}

// Experiment and trial tables (and the host's diagnostic events table).
resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Experiment and trial tables.'
  }
}

// Application Insights has local auth disabled: the host sends telemetry with Entra ID.
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, roleIds.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Telemetry to Application Insights with Entra ID authentication.'
  }
}

// The Dask VMs' NICs live in the experiment resource group but join this subnet. At subnet scope the
// only Virtual Machine Contributor action that applies is virtualNetworks/subnets/join/action (plus
// reads); unlike Network Contributor it cannot change the subnet or its NSG.
resource daskSubnetJoin 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(daskSubnet.id, principalId, roleIds.virtualMachineContributor)
  scope: daskSubnet
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.virtualMachineContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Join Dask VM network interfaces to the private dask subnet.'
  }
}

// network.existing_vnet = this VNet, existing_subnet = dask: the backend reads the subnet (its prefixes for
// the Dask rule, its delegation, its way out) and never its VNet. RBAC is inherited downwards only, so a role
// here reads this subnet and nothing above it; Virtual Machine Contributor (above) has no subnets/read.
resource daskSubnetReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(daskSubnet.id, principalId, roleIds.reader)
  scope: daskSubnet
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.reader)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Read the private dask subnet (prefixes, delegation, NAT gateway) the Dask VMs may join.'
  }
}

// Attaching a user-assigned identity to a VM needs userAssignedIdentities/*/assign/action on the
// identity (besides write on the VM). Scoped to the Dask VMs' identity only: the app can hand out no
// other identity, and this role neither changes the identity nor grants it anything.
resource vmIdentityOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vmIdentity.id, principalId, roleIds.managedIdentityOperator)
  scope: vmIdentity
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.managedIdentityOperator)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Attach the Dask VM identity to the VMs the app creates.'
  }
}

// Each experiment's Dask VMs run as a user-assigned identity of their own (created by the app in the experiment
// resource group) that reaches only that experiment's container: the app assigns Storage Blob Data Contributor
// at the container's scope when the experiment is provisioned and deletes it at teardown. No secret then goes
// into the VMs' customData. The condition is a constrained delegation: this assignment lets the app assign (and
// delete) that one role, to service principals only, and nothing else (no Owner, no User Access Administrator).
var blobContributorOnly = '((!(ActionMatches{\'Microsoft.Authorization/roleAssignments/write\'})) OR (@Request[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {${roleIds.storageBlobDataContributor}} AND @Request[Microsoft.Authorization/roleAssignments:PrincipalType] ForAnyOfAnyValues:StringEqualsIgnoreCase {\'ServicePrincipal\'})) AND ((!(ActionMatches{\'Microsoft.Authorization/roleAssignments/delete\'})) OR (@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {${roleIds.storageBlobDataContributor}}))'

resource experimentAreaRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.roleBasedAccessControlAdministrator)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.roleBasedAccessControlAdministrator)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Give each experiment\'s Dask VM identity Storage Blob Data Contributor on its own container only.'
    condition: blobContributorOnly
    conditionVersion: '2.0'
  }
}
