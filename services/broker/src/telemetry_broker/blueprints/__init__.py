"""HTTP blueprints of the broker, one per resource."""
