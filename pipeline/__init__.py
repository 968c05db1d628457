"""What both stages share: configuration, the feature store, media helpers, splits and the CLI."""
