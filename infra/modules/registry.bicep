// The deployment's container registry for the vmcluster backend: the project image is built into it once
// (az acr build of gpu_jobs/Dockerfile, infra/README.md) and the Dask VMs pull it by digest as their
// experiment's own identity (AcrPull, assigned by the Function App per experiment: roles-registry.bicep).
// No admin user, no anonymous pull: Entra identities only.

@description('Azure region.')
param location string

@description('Registry name (5-50 letters and digits).')
@minLength(5)
@maxLength(50)
param name string

@description('Tags applied to the registry.')
param tags object = {}

resource registry 'Microsoft.ContainerRegistry/registries@2025-11-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Basic'
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

output name string = registry.name
output id string = registry.id
output loginServer string = registry.properties.loginServer
