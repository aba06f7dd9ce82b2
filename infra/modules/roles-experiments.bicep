// Role assignments on the experiment resource group (the module's target scope), where the backends
// create experiment networks (VNets, NSGs, public IPs) and Dask AzureVMCluster VMs (VMs, NICs, disks).

import { roleIds } from 'role-definitions.bicep'

@description('Object (principal) ID of the Function App system-assigned identity.')
param principalId string

// VNets, subnets, NSGs and rules, public IPs (Virtual Machine Contributor can join but not create them).
resource networkContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, roleIds.networkContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.networkContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Experiment networks: VNets, subnets, NSGs, public IPs.'
  }
}

// VMs, their OS disks and NICs (networkInterfaces/*), and joining NSGs, public IPs and subnets.
resource virtualMachineContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, roleIds.virtualMachineContributor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.virtualMachineContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Dask AzureVMCluster VMs, NICs and disks.'
  }
}
