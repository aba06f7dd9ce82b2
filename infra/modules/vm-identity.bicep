// The user-assigned managed identity of the Dask VMs (vmcluster backend) and its data roles.
//
// The Function App creates the VMs in the experiment resource group and attaches this identity to each
// (RAPIDS_HPO_VM_IDENTITY_ID); the HPO driver on the VMs reaches the control-plane storage with it
// (DefaultAzureCredential with AZURE_CLIENT_ID = RAPIDS_HPO_VM_IDENTITY_CLIENT_ID). The driver reads
// the experiment, writes trials (tables) and writes artifacts (the artifacts container); it never
// touches queues, so it gets no queue role.
//
// Deployed in the control-plane resource group: the identity outlives experiment clean-ups (deleting the
// experiment group leaves it and its role assignments intact), and an identity can be attached to VMs in
// any resource group of the tenant by a caller holding Managed Identity Operator on it (the Function App
// gets that role, scoped to this identity only, in roles-controlplane.bicep).

import { roleIds } from 'role-definitions.bicep'

@description('Azure region.')
param location string

@description('Name of the user-assigned managed identity.')
param name string

@description('Control-plane storage account name.')
param storageAccountName string

@description('Blob container the HPO driver writes artifacts to (shared/config.py CONTAINER_ARTIFACTS).')
param artifactsContainerName string

@description('Tags applied to every resource.')
param tags object = {}

resource vmIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' = {
  name: name
  location: location
  tags: tags
}

resource storage 'Microsoft.Storage/storageAccounts@2026-09-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2026-09-01' existing = {
  parent: storage
  name: 'default'
}

resource artifactsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2026-09-01' existing = {
  parent: blobService
  name: artifactsContainerName
}

// The store opens (and creates if missing) the experiments, trials and idempotency tables; the driver
// reads the experiment and writes trials. The account's only other tables are the Functions host's
// diagnostic events.
resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, vmIdentity.id, roleIds.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageTableDataContributor)
    principalId: vmIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    description: 'Dask VMs: HPO driver reads the experiment and writes trials.'
  }
}

// The artifacts container only, not the account: the same account holds the Functions host's blobs (its
// function keys among them) and the Flex deployment package, which code on the VMs must never reach.
resource artifactsBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(artifactsContainer.id, vmIdentity.id, roleIds.storageBlobDataContributor)
  scope: artifactsContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataContributor)
    principalId: vmIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    description: 'Dask VMs: HPO driver writes its outcome and the best model to the artifacts container.'
  }
}

output name string = vmIdentity.name
@description('ARM resource id: RAPIDS_HPO_VM_IDENTITY_ID, attached to every Dask VM.')
output id string = vmIdentity.id
@description('Client id (not a secret): RAPIDS_HPO_VM_IDENTITY_CLIENT_ID, AZURE_CLIENT_ID on the VMs.')
output clientId string = vmIdentity.properties.clientId
output principalId string = vmIdentity.properties.principalId
