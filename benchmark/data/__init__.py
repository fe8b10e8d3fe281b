"""The data layer: datasets decoded once (synthetic, folders, manifests, LIMUC) and the splits of a protocol."""
