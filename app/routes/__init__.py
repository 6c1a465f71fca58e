"""HTTP routes, one module per resource; each route is a few lines over app/jobs.py, app/registry.py…"""
