// An Azure Machine Learning workspace and its dependencies: Key Vault (RBAC mode), a storage account,
// Application Insights (into the shared Log Analytics workspace) and, optionally, a container registry.
// Deployed into the experiment resource group, where the AzureML backend finds it
// (AZURE_RESOURCE_GROUP + AZUREML_WORKSPACE).
//
// Also the identity the sweeps run as: AzureML's user identity reaches data on behalf of a user principal
// only, and the control plane submits as a managed identity, so each trial runs as its AmlCompute cluster's
// managed identity (the job's identity is ManagedIdentityConfiguration). That is this user-assigned identity
// (AZUREML_COMPUTE_IDENTITY_ID/_CLIENT_ID; the backend attaches it to every cluster it creates), holding:
// Storage Blob Data Reader on the workspace storage (data assets; Contributor instead with keyless storage,
// where the job also writes its outputs with it) and AcrPull on the workspace registry (its admin user is
// off, so nodes pull the built image with this identity). Grant it Storage Blob Data Reader on any other
// account specs read data from.

@description('Azure region.')
param location string

@description('Workspace name.')
param workspaceName string

@description('Workspace storage account name (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param storageAccountName string

@description('Key Vault name (3-24 characters).')
@minLength(3)
@maxLength(24)
param keyVaultName string

@description('Application Insights component name for the workspace.')
param appInsightsName string

@description('Resource ID of the Log Analytics workspace the Application Insights component writes to.')
param logAnalyticsId string

@description('Create a container registry for the workspace (else AzureML creates one on first image build).')
param deployContainerRegistry bool = false

@description('Container registry name (5-50 letters and digits), used when deployContainerRegistry is true.')
param containerRegistryName string

@description('Disable shared-key access on the workspace storage and use identity-based system datastores. AzureML documents this as preview; compute clusters then need an identity with data roles on the storage.')
param keylessStorage bool = false

@description('Name of the user-assigned managed identity the AmlCompute clusters (and so the trials) run as.')
param computeIdentityName string

@description('Tags applied to every resource.')
param tags object = {}

import { roleIds } from 'role-definitions.bicep'

resource storage 'Microsoft.Storage/storageAccounts@2026-09-01' = {
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    // AzureML's generally available default reaches its system datastores with the account key, so
    // shared keys stay on unless keylessStorage opts into identity-based datastores (preview).
    allowSharedKeyAccess: !keylessStorage
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
  }
}

resource keyVault 'Microsoft.KeyVault/vaults@2026-05-15' = {
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalyticsId
    IngestionMode: 'LogAnalytics'
  }
}

resource containerRegistry 'Microsoft.ContainerRegistry/registries@2025-11-01' = if (deployContainerRegistry) {
  name: containerRegistryName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    adminUserEnabled: false
  }
}

resource computeIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' = {
  name: computeIdentityName
  location: location
  tags: tags
}

resource computeDataReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!keylessStorage) {
  name: guid(storage.id, computeIdentity.id, roleIds.storageBlobDataReader)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataReader)
    principalId: computeIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    description: 'Trials read data assets on the workspace storage as the compute identity.'
  }
}

resource computeDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (keylessStorage) {
  name: guid(storage.id, computeIdentity.id, roleIds.storageBlobDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataContributor)
    principalId: computeIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    description: 'Keyless workspace storage: trials read data and write outputs as the compute identity.'
  }
}

resource computeAcrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (deployContainerRegistry) {
  name: guid(containerRegistry.id, computeIdentity.id, roleIds.acrPull)
  scope: containerRegistry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.acrPull)
    principalId: computeIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    description: 'Nodes pull the built trial image (the registry admin user is off).'
  }
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-12-01' = {
  name: workspaceName
  location: location
  tags: tags
  kind: 'Default'
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    friendlyName: workspaceName
    storageAccount: storage.id
    keyVault: keyVault.id
    applicationInsights: appInsights.id
    containerRegistry: deployContainerRegistry ? resourceId('Microsoft.ContainerRegistry/registries', containerRegistryName) : null
    systemDatastoresAuthMode: keylessStorage ? 'Identity' : 'AccessKey'
    publicNetworkAccess: 'Enabled'
    v1LegacyMode: false
  }
  dependsOn: [
    containerRegistry
  ]
}

output workspaceName string = workspace.name
output workspaceId string = workspace.id
output storageAccountName string = storage.name
@description('AZUREML_COMPUTE_IDENTITY_ID: attached to every cluster the backend creates.')
output computeIdentityId string = computeIdentity.id
@description('AZUREML_COMPUTE_IDENTITY_CLIENT_ID: the identity each sweep job names.')
output computeIdentityClientId string = computeIdentity.properties.clientId
output computeIdentityName string = computeIdentity.name
