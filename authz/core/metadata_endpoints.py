"""Cloud instance-metadata endpoints: credentials live there, so egress to
them is denied unless a rule names the exact destination.

Sources (vendor documentation):
- AWS EC2 IMDS, IPv4 and IPv6: docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html
- AWS ECS task metadata and credentials: docs.aws.amazon.com/AmazonECS/latest/developerguide/task-metadata-endpoint-v2.html
- AWS EKS Pod Identity agent: docs.aws.amazon.com/eks/latest/userguide/pod-id-agent-setup.html
- Google Cloud metadata server: cloud.google.com/compute/docs/storing-retrieving-metadata
- Azure IMDS (169.254.169.254, no DNS name): learn.microsoft.com/azure/virtual-machines/instance-metadata-service
- Azure WireServer: learn.microsoft.com/azure/virtual-network/what-is-ip-address-168-63-129-16
- Alibaba Cloud ECS metadata: alibabacloud.com/help/en/ecs/user-guide/view-instance-metadata
- Oracle Cloud (169.254.169.254; 192.0.0.192 on Cloud at Customer):
  docs.cloud.oracle.com/iaas/Content/Compute/Tasks/gettingmetadata.htm
- DigitalOcean droplet metadata (169.254.169.254): docs.digitalocean.com/reference/api/metadata/
"""

from __future__ import annotations

__all__ = ["METADATA_ENDPOINTS"]

#: Canonical host forms (see authz.core.destination.normalize_host).
METADATA_ENDPOINTS: frozenset[str] = frozenset(
    {
        "169.254.169.254",  # AWS, Azure, GCP, Oracle, DigitalOcean, OpenStack
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.170.23",  # AWS EKS Pod Identity agent
        "fd00:ec2::23",  # AWS EKS Pod Identity agent over IPv6
        "metadata.google.internal",  # Google Cloud
        "168.63.129.16",  # Azure WireServer
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud at Customer
    }
)
