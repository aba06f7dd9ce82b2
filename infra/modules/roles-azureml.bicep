// Role assignments for the Function App's identity on the AzureML workspace (deployed in the same
// resource group as this module's target scope).

import { roleIds } from 'role-definitions.bicep'

@description('Object (principal) ID of the Function App system-assigned identity.')
param principalId string

@description('AzureML workspace name.')
param workspaceName string

@description('The workspace storage account name.')
param storageAccountName string

@description('True when the workspace storage has shared keys disabled (identity-based datastores).')
param keylessStorage bool = false

@description('Name of the AmlCompute clusters\' user-assigned identity (azureml.bicep).')
param computeIdentityName string

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-12-01' existing = {
  name: workspaceName
}

resource storage 'Microsoft.Storage/storageAccounts@2026-09-01' existing = {
  name: storageAccountName
}

resource computeIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' existing = {
  name: computeIdentityName
}

// workspaces.get (the MLflow tracking URI) and reading job outputs (jobs.download).
resource workspaceReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, roleIds.reader)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.reader)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Read the workspace (MLflow tracking URI) and job outputs.'
  }
}

// Creating an AmlCompute with a user-assigned identity needs userAssignedIdentities/assign/action on it:
// this role, on this identity only.
resource computeIdentityOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(computeIdentity.id, principalId, roleIds.managedIdentityOperator)
  scope: computeIdentity
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.managedIdentityOperator)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Attach the compute identity to the AmlCompute clusters the backend creates.'
  }
}

// Jobs, sweeps, environments, models, datastores: everything in the workspace except creating or
// deleting compute and changing the workspace itself.
resource dataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, roleIds.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.azureMLDataScientist)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Submit and monitor command and sweep jobs.'
  }
}

// AzureML Data Scientist excludes compute create/delete; the AzureML backend creates and removes
// AmlCompute GPU clusters.
resource computeOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, roleIds.azureMLComputeOperator)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.azureMLComputeOperator)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Create, scale and delete AmlCompute clusters.'
  }
}

// With identity-based system datastores the SDK uploads job code to the workspace storage with the
// caller's own token, so the caller needs data access there; with account keys it does not.
resource workspaceBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (keylessStorage) {
  name: guid(storage.id, principalId, roleIds.storageBlobDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Upload job code and read outputs on the keyless workspace storage.'
  }
}
