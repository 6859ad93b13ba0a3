"""Everything that talks to AWS: configuration, errors, training, endpoint, model packages.
Depends on core only; services choose it by configuration."""
