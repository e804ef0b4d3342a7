"""rtdecode package."""
