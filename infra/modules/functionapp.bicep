// The Function App on the Flex Consumption plan (FC1), Linux, Python.
//
// Flex specifics: the runtime and version live in `functionAppConfig.runtime` (so no
// FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION app settings), the code package is read from a
// blob container with the app's system-assigned identity, and VNet integration uses a subnet delegated
// to Microsoft.App/environments.

@description('Azure region.')
param location string

@description('Function App name (globally unique: it is the *.azurewebsites.net host name).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Storage account holding the deployment container (same account as AzureWebJobsStorage).')
param storageAccountName string

@description('Blob container the Flex plan deploys the code package from.')
param deploymentContainerName string

@description('Resource ID of the integration subnet (delegated to Microsoft.App/environments).')
param subnetId string

@description('App settings (name -> string value). No secrets: every connection is identity-based.')
param appSettings object

@description('Python version of the Flex runtime: 3.13, the one requirements.txt is locked on and the tests run the worker on.')
@allowed([
  '3.13'
])
param pythonVersion string = '3.13'

@description('Upper bound on instances the app scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory per instance (MB).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Tags applied to every resource.')
param tags object = {}

resource storage 'Microsoft.Storage/storageAccounts@2026-09-01' existing = {
  name: storageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2025-05-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2025-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    virtualNetworkSubnetId: subnetId
    siteConfig: {
      minTlsVersion: '1.2'
      appSettings: [
        for setting in items(appSettings): {
          name: setting.key
          value: setting.value
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

output name string = site.name
output id string = site.id
output principalId string = site.identity.principalId
output defaultHostName string = site.properties.defaultHostName
