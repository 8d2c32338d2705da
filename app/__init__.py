"""kdservice HTTP API: routes -> services -> db. Imports kdcore only for its registries."""
