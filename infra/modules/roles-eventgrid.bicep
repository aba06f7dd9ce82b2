// (deployEventGrid) The Function App's identity may publish to the control plane's topic, and only there.

import { roleIds } from 'role-definitions.bicep'

@description('Object (principal) ID of the Function App system-assigned identity.')
param principalId string

@description('The Event Grid topic the control plane publishes to.')
param topicName string

resource topic 'Microsoft.EventGrid/topics@2025-02-15' existing = {
  name: topicName
}

resource dataSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, principalId, roleIds.eventGridDataSender)
  scope: topic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.eventGridDataSender)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Publish the control plane CloudEvents (experiment status, finished trials, best trial).'
  }
}
