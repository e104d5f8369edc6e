"""Infrastructure as code (Pulumi, pulumi-docker)."""
