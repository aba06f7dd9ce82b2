// The control-plane virtual network.
//
// - `functions`: the Function App's VNet integration subnet. Flex Consumption requires the delegation to
//   Microsoft.App/environments; nothing else may live in it.
// - `dask`: an optional subnet for Dask head/worker VMs (a spec's network.existing_vnet = this VNet's id,
//   existing_subnet = dask; by default each experiment gets a VNet of its own in the experiment group).
//   The Function App never connects to the cluster (they meet in storage). Its NSG admits Dask's ports
//   (8786 scheduler, 8787 dashboard) and any port between the cluster's own VMs, from the dask subnet
//   only; every other source inside the VNet is denied, the Internet by the platform's default rule.
// - An optional NAT gateway gives both subnets outbound access (ARM/AzureML calls, image pulls) without
//   public IPs on the VMs.

@description('Azure region.')
param location string

@description('Virtual network name.')
param vnetName string

@description('Address space of the virtual network.')
param addressPrefix string

@description('Prefix of the Function App integration subnet (/27 or larger).')
param functionsSubnetPrefix string

@description('Prefix of the Dask VM subnet.')
param daskSubnetPrefix string

@description('Create a NAT gateway for outbound traffic from both subnets.')
param enableNatGateway bool = true

@description('Tags applied to every resource.')
param tags object = {}

var functionsSubnetName = 'functions'
var daskSubnetName = 'dask'
var natGatewayName = '${vnetName}-nat'
var natGatewayRef = {
  id: resourceId('Microsoft.Network/natGateways', natGatewayName)
}

resource natPublicIp 'Microsoft.Network/publicIPAddresses@2026-03-01' = if (enableNatGateway) {
  name: '${vnetName}-nat-ip'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    publicIPAllocationMethod: 'Static'
    publicIPAddressVersion: 'IPv4'
  }
}

resource natGateway 'Microsoft.Network/natGateways@2026-03-01' = if (enableNatGateway) {
  name: natGatewayName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    idleTimeoutInMinutes: 10
    publicIpAddresses: [
      {
        id: natPublicIp.id
      }
    ]
  }
}

// No custom rules: the platform defaults (VNet in, load balancer in, deny the rest) are what the
// integration subnet needs. The NSG exists so that the subnet is never left without one.
resource functionsNsg 'Microsoft.Network/networkSecurityGroups@2026-03-01' = {
  name: '${vnetName}-${functionsSubnetName}-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource daskNsg 'Microsoft.Network/networkSecurityGroups@2026-03-01' = {
  name: '${vnetName}-${daskSubnetName}-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'allow-dask-from-cluster'
        properties: {
          description: 'Dask scheduler (8786) and dashboard (8787), from the cluster subnet only (the Function App never connects: it meets the cluster in storage).'
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: daskSubnetPrefix
          sourcePortRange: '*'
          destinationAddressPrefix: daskSubnetPrefix
          destinationPortRanges: [
            '8786'
            '8787'
          ]
        }
      }
      {
        name: 'allow-dask-intra-cluster'
        properties: {
          description: 'Scheduler, workers and nannies talk to each other on ephemeral ports.'
          priority: 110
          direction: 'Inbound'
          access: 'Allow'
          protocol: '*'
          sourceAddressPrefix: daskSubnetPrefix
          sourcePortRange: '*'
          destinationAddressPrefix: daskSubnetPrefix
          destinationPortRange: '*'
        }
      }
      {
        name: 'deny-other-vnet-inbound'
        properties: {
          description: 'Overrides the default AllowVnetInBound: nothing else in the VNet reaches the cluster.'
          priority: 4000
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: 'VirtualNetwork'
          sourcePortRange: '*'
          destinationAddressPrefix: daskSubnetPrefix
          destinationPortRange: '*'
        }
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2026-03-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: functionsSubnetName
        properties: {
          addressPrefix: functionsSubnetPrefix
          networkSecurityGroup: {
            id: functionsNsg.id
          }
          natGateway: enableNatGateway ? natGatewayRef : null
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: daskSubnetName
        properties: {
          addressPrefix: daskSubnetPrefix
          networkSecurityGroup: {
            id: daskNsg.id
          }
          natGateway: enableNatGateway ? natGatewayRef : null
        }
      }
    ]
  }
  dependsOn: [
    natGateway
  ]
}

output vnetName string = vnet.name
output vnetId string = vnet.id
output functionsSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, functionsSubnetName)
output daskSubnetName string = daskSubnetName
output daskSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, daskSubnetName)
