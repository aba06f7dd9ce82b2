// The Function App's one role on the deployment's registry: assign AcrPull, and nothing else, to each
// experiment's Dask VM identity (created by the app when the experiment is provisioned, deleted at teardown with
// its assignments). A constrained delegation, as for the experiment containers (roles-controlplane.bicep): the
// condition lets the app write and delete assignments of AcrPull only, to service principals only.

import { roleIds } from 'role-definitions.bicep'

@description('Object (principal) ID of the Function App system-assigned identity.')
param principalId string

@description('Name of the deployment\'s container registry (in this resource group).')
param registryName string

resource registry 'Microsoft.ContainerRegistry/registries@2025-11-01' existing = {
  name: registryName
}

var acrPullOnly = '((!(ActionMatches{\'Microsoft.Authorization/roleAssignments/write\'})) OR (@Request[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {${roleIds.acrPull}} AND @Request[Microsoft.Authorization/roleAssignments:PrincipalType] ForAnyOfAnyValues:StringEqualsIgnoreCase {\'ServicePrincipal\'})) AND ((!(ActionMatches{\'Microsoft.Authorization/roleAssignments/delete\'})) OR (@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {${roleIds.acrPull}}))'

resource experimentImagePull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, principalId, roleIds.roleBasedAccessControlAdministrator)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.roleBasedAccessControlAdministrator)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Give each experiment\'s Dask VM identity AcrPull on this registry only.'
    condition: acrPullOnly
    conditionVersion: '2.0'
  }
}
