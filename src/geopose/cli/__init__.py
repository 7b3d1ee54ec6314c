"""Command-line interface of geopose (typer + rich)."""
