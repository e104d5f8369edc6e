"""Pulumi entry point (`pulumi up` from this folder): declares the container stack."""

from infra.stack import main

main()
