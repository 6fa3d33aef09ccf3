"""Side-by-side benchmark of ssesup against sse-starlette, FastAPI's ``fastapi.sse`` and a bare floor.

Run ``python -m bench --help``. Each system is served by its own uvicorn process (``bench/apps``);
this process is the client and reads raw sockets (``bench/client.py``).
"""
