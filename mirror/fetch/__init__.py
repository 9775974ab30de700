"""access_url -> store: DataLink, resumable downloads, verification, recorded in the catalogue."""
