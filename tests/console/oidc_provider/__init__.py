"""A real OpenID Connect provider for the single sign-on tests: django-oauth-toolkit's, run as
its own process (``serve.py``) with its own SQLite database, an RSA key made by the test, a
confidential client and users whose Django groups are published as the ``groups`` claim."""
