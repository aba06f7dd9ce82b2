// rapids-hpo-control: the serverless control plane (Azure Functions, Flex Consumption) and what it needs.
// Deploy into the control-plane resource group:
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json
// Names and settings shared with the code come from shared/config.py; tests/test_infra.py checks that
// this file and that module agree.

targetScope = 'resourceGroup'

@description('Azure region of the control plane (and of the AzureML workspace, when deployed). Must offer Flex Consumption.')
param location string = resourceGroup().location

@description('Short prefix for resource names: 2-10 lowercase letters or digits.')
@minLength(2)
@maxLength(10)
param namePrefix string = 'rhpo'

@description('Resource group where experiments create their networks and Dask VMs (and where the AzureML workspace goes). It must exist. Empty: this resource group.')
param experimentResourceGroup string = ''

@description('Deploy an AzureML workspace (Key Vault, storage, Application Insights, optional registry) for the AzureML backend.')
param deployAzureML bool = false

@description('With deployAzureML: also create a container registry for the workspace.')
param deployContainerRegistry bool = false

@description('With deployAzureML: disable shared keys on the workspace storage (AzureML identity-based datastores, preview).')
param azureMLKeylessStorage bool = false

@description('Create a container registry for the vmcluster backend\'s project image (built from gpu_jobs/Dockerfile with az acr build; the Dask VMs pull it by digest as their experiment\'s identity).')
param deployImageRegistry bool = true

@description('RAPIDS_HPO_IMAGE: the project image in that registry, by digest (<registry>.azurecr.io/rapids-hpo@sha256:...), once built (infra/README.md). Empty: the stock RAPIDS image, and a hosted run must name an image by digest.')
param vmImage string = ''

@description('Deploy an Event Grid topic (CloudEvents 1.0) the control plane publishes its events to, with the Function App as its only sender.')
param deployEventGrid bool = false

@description('Address space of the control-plane virtual network.')
param vnetAddressPrefix string = '10.50.0.0/16'

@description('Function App integration subnet (delegated to Microsoft.App/environments).')
param functionsSubnetPrefix string = '10.50.0.0/24'

@description('Subnet for Dask scheduler and worker VMs, reachable from the Function App only.')
param daskSubnetPrefix string = '10.50.1.0/24'

@description('Create a NAT gateway for outbound traffic from the control-plane subnets.')
param enableNatGateway bool = true

@description('Upper bound on Function App instances.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory per Function App instance (MB).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('RAPIDS_HPO_POLL_SECONDS: seconds between polls of a running experiment.')
@minValue(1)
param pollSeconds int = 10

@description('RAPIDS_HPO_STALL_SECONDS: an experiment without progress for this long is re-driven by the sweep.')
@minValue(60)
param stallSeconds int = 900

@description('AZUREML_COMPUTE_ALLOWLIST: existing AmlCompute clusters (comma-separated names) that specs may run on besides those this deployment creates.')
param azureMLComputeAllowlist string = ''

@description('AZUREML_MODEL_PREFIX: registered model names must start with it (the deployment\'s namespace in the workspace registry).')
param azureMLModelPrefix string = 'rapids-hpo-'

@description('AZUREML_IMAGE_PATTERN: a regular expression environment_image must match in full. Empty: the RAPIDS images on Docker Hub and NGC.')
param azureMLImagePattern string = ''

@description('RAPIDS_HPO_DATA_HOSTS: data hosts (comma-separated; a leading dot allows subdomains) that specs may read from besides Azure storage and AzureML data.')
param dataHosts string = ''

@description('RAPIDS_HPO_ALLOWED_HOSTS: host names the API answers to besides the Function App\'s own (WEBSITE_HOSTNAME), e.g. a custom domain (comma-separated); any other Host header is refused (421).')
param allowedHosts string = ''

@description('How API callers authenticate: functionKey (the Functions key; its holder may do everything) or entraId (App Service authentication validates Entra ID tokens for the API registration; app roles Experiments.Submit/Read/Admin and ownership apply).')
@allowed([
  'functionKey'
  'entraId'
])
param authMode string = 'functionKey'

@description('entraId: let people sign in to the dashboard in a browser (App Service authentication passes unauthenticated requests to the app, which refuses them itself and redirects dashboard pages to the sign-in).')
param dashboardSignIn bool = false

@description('entraId: the API app registration\'s application (client) id (README: Callers with an identity).')
param apiClientId string = ''

@description('entraId: the registration\'s Application ID URI (empty: api://<apiClientId>).')
param apiAudience string = ''

@description('entraId: what a caller holding only Experiments.Read sees: own (their experiments) or all.')
@allowed([
  'own'
  'all'
])
param readersSee string = 'own'

@description('Action group (resource id) the experiments-stuck-or-failing alert notifies; empty: the alert shows in the portal only.')
param alertActionGroupId string = ''

@description('Log Analytics retention (days).')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('Tags applied to every resource.')
param tags object = {
  app: 'rapids-hpo-control'
}

// ---- Names --------------------------------------------------------------------------------------
var prefix = toLower(namePrefix)
var compactPrefix = replace(prefix, '-', '')
var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, prefix))
var experimentRgName = empty(experimentResourceGroup) ? resourceGroup().name : experimentResourceGroup

var functionAppName = 'func-${prefix}-${resourceToken}'
var planName = 'plan-${prefix}-${resourceToken}'
var storageAccountName = take('st${compactPrefix}${resourceToken}', 24)
var logAnalyticsName = 'log-${prefix}-${resourceToken}'
var appInsightsName = 'appi-${prefix}-${resourceToken}'
var vnetName = 'vnet-${prefix}-${resourceToken}'
var vmIdentityName = 'id-dask-${prefix}-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'

var apiAudienceUri = empty(apiAudience) ? 'api://${apiClientId}' : apiAudience

var eventGridTopicName = 'evgt-${prefix}-${resourceToken}'
var azureMLWorkspaceName = 'mlw-${prefix}-${resourceToken}'
var azureMLStorageName = take('stml${compactPrefix}${resourceToken}', 24)
var azureMLKeyVaultName = take('kv-${prefix}-${resourceToken}', 24)
var azureMLAppInsightsName = 'appi-ml-${prefix}-${resourceToken}'
var azureMLRegistryName = 'cr${compactPrefix}${resourceToken}'
var azureMLComputeIdentityName = 'id-aml-${prefix}-${resourceToken}'
var imageRegistryName = 'crimg${compactPrefix}${resourceToken}'

// ---- Names shared with the code (shared/config.py: QUEUES + POISON_SUFFIX, TABLES, CONTAINERS) -----
var queueNames = [
  'experiment-requests'
  'experiment-requests-poison'
  'experiment-requests-trusted' // one trusted service's specs: its send role goes on this queue only (README)
  'experiment-requests-trusted-poison'
  'experiment-events'
  'experiment-events-poison'
  'experiment-status'
  'experiment-status-poison'
]
var tableNames = [
  'experiments'
  'trials'
]
var blobContainerNames = [
  'artifacts'
  'secrets' // the control plane's credentials (Dask TLS keys); the VM identity has no role on it
]

// ---- Resources ----------------------------------------------------------------------------------
module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    logAnalyticsName: logAnalyticsName
    appInsightsName: appInsightsName
    retentionInDays: logRetentionDays
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: storageAccountName
    location: location
    queueNames: queueNames
    tableNames: tableNames
    containerNames: concat(blobContainerNames, [deploymentContainerName])
    tags: tags
  }
}

module network 'modules/network.bicep' = {
  name: 'network'
  params: {
    location: location
    vnetName: vnetName
    addressPrefix: vnetAddressPrefix
    functionsSubnetPrefix: functionsSubnetPrefix
    daskSubnetPrefix: daskSubnetPrefix
    enableNatGateway: enableNatGateway
    tags: tags
  }
}

// The Dask VMs' user-assigned identity (vmcluster backend), with no role on the control-plane storage:
// the compute holds a per-experiment SAS instead (shared/store/compute.py). In this (control-plane)
// resource group: the VMs in the experiment group can use it all the same, and clean-ups never delete it.
module vmIdentity 'modules/vm-identity.bicep' = {
  name: 'vm-identity'
  params: {
    location: location
    name: vmIdentityName
    tags: tags
    appInsightsName: monitoring.outputs.appInsightsName // the driver's telemetry (Monitoring Metrics Publisher)
  }
}

module imageRegistry 'modules/registry.bicep' = if (deployImageRegistry) {
  name: 'image-registry'
  params: {
    location: location
    name: imageRegistryName
    tags: tags
  }
}

// App settings. Names come from shared/config.py ENV_DEFAULTS, plus the two Application Insights
// settings the Functions host reads. AzureWebJobsStorage is identity-based (account name only, no
// connection string; the system-assigned identity is the default credential). Flex Consumption takes
// the runtime from functionAppConfig, so FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION are
// deliberately absent. RAPIDS_HPO_HOME (local store), RAPIDS_HPO_API_URL and RAPIDS_HPO_FUNCTION_KEY
// (CLI client side) do not apply in Azure.
var appSettings = {
  AzureWebJobsStorage__accountName: storage.outputs.name
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
  AZURE_SUBSCRIPTION_ID: subscription().subscriptionId
  AZURE_RESOURCE_GROUP: experimentRgName
  AZURE_LOCATION: location
  AZUREML_WORKSPACE: deployAzureML ? azureMLWorkspaceName : ''
  AZUREML_COMPUTE_IDENTITY_ID: deployAzureML ? azureML.outputs.computeIdentityId : ''
  AZUREML_COMPUTE_IDENTITY_CLIENT_ID: deployAzureML ? azureML.outputs.computeIdentityClientId : ''
  AZUREML_COMPUTE_ALLOWLIST: azureMLComputeAllowlist
  AZUREML_MODEL_PREFIX: azureMLModelPrefix
  AZUREML_IMAGE_PATTERN: azureMLImagePattern
  RAPIDS_HPO_VM_IDENTITY_ID: vmIdentity.outputs.id
  RAPIDS_HPO_VM_IDENTITY_CLIENT_ID: vmIdentity.outputs.clientId
  // The scope of each experiment's container, where its VMs' own identity gets its one role (vmcluster).
  RAPIDS_HPO_STORAGE_ACCOUNT_ID: storage.outputs.id
  // The project image's registry (vmcluster): each experiment's VM identity gets AcrPull there; the image by digest.
  RAPIDS_HPO_REGISTRY: deployImageRegistry ? imageRegistry.outputs.loginServer : ''
  RAPIDS_HPO_REGISTRY_ID: deployImageRegistry ? imageRegistry.outputs.id : ''
  RAPIDS_HPO_IMAGE: vmImage
  // This deployment's id, tagged on every experiment resource: the orphan sweep deletes only its own.
  RAPIDS_HPO_INSTANCE_ID: storage.outputs.name
  RAPIDS_HPO_POLL_SECONDS: string(pollSeconds)
  RAPIDS_HPO_STALL_SECONDS: string(stallSeconds)
  EVENTGRID_TOPIC_ENDPOINT: deployEventGrid ? eventGrid.outputs.endpoint : ''
  RAPIDS_HPO_EVENTS_SOURCE: '/rapids-hpo-control/${functionAppName}'
  RAPIDS_HPO_HOSTED: '1' // hosted mode (also implied by WEBSITE_SITE_NAME): no local backend, no local data
  RAPIDS_HPO_DATA_HOSTS: dataHosts
  RAPIDS_HPO_ALLOWED_HOSTS: allowedHosts
  // Callers' identities (shared/auth): the Functions key, or Entra ID behind App Service authentication.
  RAPIDS_HPO_AUTH: authMode == 'entraId' ? 'entra' : 'key'
  RAPIDS_HPO_AUTH_TENANT_ID: tenant().tenantId
  RAPIDS_HPO_AUTH_CLIENT_ID: apiClientId
  RAPIDS_HPO_AUTH_AUDIENCE: apiAudienceUri
  RAPIDS_HPO_AUTH_AUTHORITY: environment().authentication.loginEndpoint
  RAPIDS_HPO_READERS_SEE: readersSee
  RAPIDS_HPO_MAX_ARTIFACT_BYTES: '2147483648' // the quota on what one experiment's compute may write
  RAPIDS_HPO_CANCEL_WAIT_SECONDS: '600' // how long a cancelled run has to end with its best model
  // OpenTelemetry (shared/telemetry): the worker attaches the host's trace context to each invocation and the
  // app exports with the distro and its identity; the dashboard links traces to this component.
  PYTHON_ENABLE_OPENTELEMETRY: 'true'
  RAPIDS_HPO_APPINSIGHTS_ID: monitoring.outputs.appInsightsId
}

// The experiments workbook and the stuck-or-failing alert, over the app's OpenTelemetry (shared/telemetry).
module observability 'modules/observability.bicep' = {
  name: 'observability'
  params: {
    location: location
    appInsightsId: monitoring.outputs.appInsightsId
    namePrefix: '${prefix}-${resourceToken}'
    stuckMinutes: max(30, (stallSeconds * 2) / 60)
    actionGroupId: alertActionGroupId
    tags: tags
  }
}

module eventGrid 'modules/eventgrid.bicep' = if (deployEventGrid) {
  name: 'eventgrid'
  params: {
    location: location
    name: eventGridTopicName
    tags: tags
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    location: location
    name: functionAppName
    planName: planName
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    subnetId: network.outputs.functionsSubnetId
    appSettings: appSettings
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    tags: tags
  }
}

module functionAppAuth 'modules/functionapp-auth.bicep' = if (authMode == 'entraId') {
  name: 'functionapp-auth'
  params: {
    functionAppName: functionApp.outputs.name
    tenantId: tenant().tenantId
    clientId: apiClientId
    audience: apiAudienceUri
    loginEndpoint: environment().authentication.loginEndpoint
    browserSignIn: dashboardSignIn
  }
}

module controlPlaneRoles 'modules/roles-controlplane.bicep' = {
  name: 'roles-controlplane'
  params: {
    principalId: functionApp.outputs.principalId
    storageAccountName: storage.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    vnetName: network.outputs.vnetName
    daskSubnetName: network.outputs.daskSubnetName
    vmIdentityName: vmIdentity.outputs.name
  }
}

module registryRoles 'modules/roles-registry.bicep' = if (deployImageRegistry) {
  name: 'roles-registry'
  params: {
    principalId: functionApp.outputs.principalId
    registryName: imageRegistry.outputs.name
  }
}

module eventGridRoles 'modules/roles-eventgrid.bicep' = if (deployEventGrid) {
  name: 'roles-eventgrid'
  params: {
    principalId: functionApp.outputs.principalId
    topicName: eventGridTopicName
  }
  dependsOn: [
    eventGrid
  ]
}

module experimentRoles 'modules/roles-experiments.bicep' = {
  name: 'roles-experiments'
  scope: resourceGroup(experimentRgName)
  params: {
    principalId: functionApp.outputs.principalId
  }
}

module azureML 'modules/azureml.bicep' = if (deployAzureML) {
  name: 'azureml'
  scope: resourceGroup(experimentRgName)
  params: {
    location: location
    workspaceName: azureMLWorkspaceName
    storageAccountName: azureMLStorageName
    keyVaultName: azureMLKeyVaultName
    appInsightsName: azureMLAppInsightsName
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    deployContainerRegistry: deployContainerRegistry
    containerRegistryName: azureMLRegistryName
    keylessStorage: azureMLKeylessStorage
    computeIdentityName: azureMLComputeIdentityName
    tags: tags
  }
}

// The trials export their telemetry with the clusters' identity (roles-telemetry.bicep).
module azureMLTelemetryRole 'modules/roles-telemetry.bicep' = if (deployAzureML) {
  name: 'roles-telemetry-azureml'
  params: {
    appInsightsName: monitoring.outputs.appInsightsName
    computeIdentityName: azureMLComputeIdentityName
    computeIdentityResourceGroup: experimentRgName
  }
  dependsOn: [
    azureML
  ]
}

module azureMLRoles 'modules/roles-azureml.bicep' = if (deployAzureML) {
  name: 'roles-azureml'
  scope: resourceGroup(experimentRgName)
  params: {
    principalId: functionApp.outputs.principalId
    workspaceName: azureMLWorkspaceName
    storageAccountName: azureMLStorageName
    keylessStorage: azureMLKeylessStorage
    computeIdentityName: azureMLComputeIdentityName
  }
  dependsOn: [
    azureML
  ]
}

// ---- Outputs ------------------------------------------------------------------------------------
output functionAppName string = functionApp.outputs.name
@description('Value for RAPIDS_HPO_API_URL (the CLI adds /api/...).')
output functionAppUrl string = 'https://${functionApp.outputs.defaultHostName}'
output functionAppPrincipalId string = functionApp.outputs.principalId
@description('entraId: the scope callers request a token for (RAPIDS_HPO_API_SCOPE for the CLI).')
output apiScope string = authMode == 'entraId' ? '${apiAudienceUri}/.default' : ''
output storageAccountName string = storage.outputs.name
output experimentResourceGroup string = experimentRgName
output azureMLWorkspaceName string = deployAzureML ? azureMLWorkspaceName : ''
@description('The Event Grid topic to subscribe to (empty without deployEventGrid).')
output eventGridTopicName string = deployEventGrid ? eventGridTopicName : ''
output experimentsWorkbookId string = observability.outputs.workbookId
output vnetName string = network.outputs.vnetName
@description('Pass as AzureVMCluster(subnet=...) so Dask VMs get private IPs the Function App can reach.')
output daskSubnetId string = network.outputs.daskSubnetId
@description('The registry to build the project image into (az acr build -r <this>; empty without deployImageRegistry).')
output imageRegistryName string = deployImageRegistry ? imageRegistry.outputs.name : ''
@description('RAPIDS_HPO_VM_IDENTITY_ID: resource id of the Dask VM identity (already an app setting).')
output vmIdentityId string = vmIdentity.outputs.id
@description('RAPIDS_HPO_VM_IDENTITY_CLIENT_ID (already an app setting; a client id is not a secret).')
output vmIdentityClientId string = vmIdentity.outputs.clientId
