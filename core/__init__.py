"""Core of the studio: schema, jobs and everything that is not UI. Never imports gradio."""
