// App Service authentication (Easy Auth) in front of the Function App, for authMode 'entraId'.
//
// Every request must carry an Entra ID access token of this tenant for the API's app registration
// (audience: its client id, as in v2.0 tokens, or its Application ID URI); anything else is answered
// 401 by the platform before the app runs. With browserSignIn, the platform passes unauthenticated
// requests on (AllowAnonymous) and the app refuses them itself (401; a browser on a dashboard page is
// redirected to the platform's sign-in), so people can open the dashboard. The platform then strips any X-MS-CLIENT-PRINCIPAL a client
// sent, sets its own, and sets WEBSITE_AUTH_ENABLED, which tells the app (shared/auth) to read it.
// The registration sets `requestedAccessTokenVersion: 2` (README: Callers with an identity), so the
// issuer is the tenant's v2.0 one. No client secret: the API only validates tokens, it signs no one in.

@description('Name of the existing Function App.')
param functionAppName string

@description('Directory (tenant) id whose tokens are accepted.')
param tenantId string

@description('The API app registration\'s application (client) id.')
param clientId string

@description('The registration\'s Application ID URI (api://<clientId> by default).')
param audience string

@description('The cloud\'s Entra ID endpoint (environment().authentication.loginEndpoint, with its trailing slash).')
param loginEndpoint string

@description('Let browsers sign in to the dashboard: the platform passes requests without a token on to the app (AllowAnonymous), which answers 401 on every API route and redirects a browser on a dashboard page to /.auth/login/aad. Needs the registration\'s web redirect URI https://<app>/.auth/login/aad/callback and ID token issuance (README).')
param browserSignIn bool = false

resource functionApp 'Microsoft.Web/sites@2025-05-01' existing = {
  name: functionAppName
}

resource auth 'Microsoft.Web/sites/config@2025-05-01' = {
  parent: functionApp
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: browserSignIn ? false : true
      unauthenticatedClientAction: browserSignIn ? 'AllowAnonymous' : 'Return401'
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: clientId
          openIdIssuer: '${loginEndpoint}${tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            clientId
            audience
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
    httpSettings: {
      requireHttps: true
    }
  }
}
