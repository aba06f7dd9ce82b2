// Built-in Azure role definition IDs used by this deployment, in one place.
//
// Each GUID is the role's `name` in Azure (identical in every cloud), checked against the
// "Azure built-in roles" reference (learn.microsoft.com/azure/role-based-access-control/built-in-roles).
// tests/test_infra.py holds the same name -> GUID table and fails if the two disagree.
// Format of each line: <key>: '<guid>' // <exact built-in role name>

@export()
@description('Built-in role definition IDs (GUIDs) by key.')
var roleIds = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1' // Storage Blob Data Reader
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Storage Queue Data Contributor
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher
  azureMLDataScientist: 'f6c7c914-8db3-469d-8ca1-694a8f32e121' // AzureML Data Scientist
  azureMLComputeOperator: 'e503ece1-11d0-4e8e-8e2c-7a6c3bf38815' // AzureML Compute Operator
  networkContributor: '4d97b98b-1d4f-4787-a291-c67834d212e7' // Network Contributor
  virtualMachineContributor: '9980e02c-c2be-4d73-94e8-173b1dc7cf3c' // Virtual Machine Contributor
  managedIdentityOperator: 'f1a07417-d97a-45cb-824c-7a7467783830' // Managed Identity Operator
  roleBasedAccessControlAdministrator: 'f58310d9-a9f6-439a-9e8d-f62e7b41a168' // Role Based Access Control Administrator
  reader: 'acdd72a7-3385-48ef-bd42-f606fba81ae7' // Reader
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d' // AcrPull
  eventGridDataSender: 'd5a91429-5739-47e2-a06b-3470a27159e7' // EventGrid Data Sender
}
