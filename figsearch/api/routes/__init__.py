"""One router per resource: search, figures, articles, health, admin."""
