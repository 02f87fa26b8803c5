"""Framework integrations: Django, Flask, ASGI (Starlette, FastAPI), Celery, serverless.

Each module imports its framework, so import only the one you use; none of them is a
dependency of tracklane. They use tracklane's public API only.
"""
