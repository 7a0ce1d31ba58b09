"""prefrl's own gymnasium tasks, registered as `prefrl/<Name>-v0` on import."""
