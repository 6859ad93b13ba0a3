"""Generated from protos/sentiloop/v1 by `make protos`; do not edit."""
