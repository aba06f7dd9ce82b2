// Role assignments on the experiment resource group (the module's target scope), where the backends
// create experiment networks (VNets, NSGs, NAT gateways, public IPs) and the Dask cluster VMs (VMs, NICs,
// disks). The AzureML workspace's storage account (shared keys on by default) lives in this group too.

import { roleIds } from 'role-definitions.bicep'

@description('Object (principal) ID of the Function App system-assigned identity.')
param principalId string

// VNets, subnets, NSGs and rules, NAT gateways, public IPs, NICs (Microsoft.Network/*).
resource networkContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, roleIds.networkContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.networkContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Experiment networks: VNets, subnets, NSGs, NAT gateways, public IPs, NICs.'
  }
}

// The cluster VMs and their OS disks, and nothing else. Not the built-in Virtual Machine Contributor: that
// role also holds Microsoft.Storage/storageAccounts/listKeys/action, and at this scope it would hand the
// Function App the keys of every storage account in the group, the AzureML workspace's among them.
// NICs, subnets, NSGs and public IPs come from Network Contributor above.
resource clusterVmOperatorRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'rapids-hpo-cluster-vm-operator')
  properties: {
    roleName: 'rapids-hpo cluster VM operator (${resourceGroup().name})'
    description: 'Create, read and delete the Dask cluster VMs, their disks and identities; no storage keys.'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
          'Microsoft.Compute/virtualMachines/*'
          'Microsoft.Compute/disks/read'
          'Microsoft.Compute/disks/write'
          'Microsoft.Compute/disks/delete'
          'Microsoft.Compute/locations/*'
          // Each experiment's VMs run as an identity of their own, created, attached and deleted with them.
          'Microsoft.ManagedIdentity/userAssignedIdentities/read'
          'Microsoft.ManagedIdentity/userAssignedIdentities/write'
          'Microsoft.ManagedIdentity/userAssignedIdentities/delete'
          'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action'
          'Microsoft.Resources/subscriptions/resourceGroups/read'
        ]
        notActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource clusterVmOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, clusterVmOperatorRole.id)
  properties: {
    roleDefinitionId: clusterVmOperatorRole.id
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Dask cluster VMs and their disks (no storage keys).'
  }
}
