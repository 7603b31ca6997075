"""One small adapter per model family: where the roles live and how video tokens are laid out."""
