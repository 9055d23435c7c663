"""Panel dashboards served by ``rastro serve`` and ``rastro demo``."""
