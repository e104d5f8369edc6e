"""NannyML monitoring, alert policy and traffic simulator."""
