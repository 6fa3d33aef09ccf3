"""Broadcasting to every connected client, with ssesup.compat (the hub is broadcaster.py).

uvicorn broadcasting_compat:app --app-dir examples
curl -N http://127.0.0.1:8000/events
curl -X POST http://127.0.0.1:8000/send -H 'Content-Type: application/json' -d '{"message": "hi"}'
"""

from broadcaster import Broadcaster, Message
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from ssesup.compat import EventSourceResponse, ServerSentEvent

broadcaster = Broadcaster()


async def events(request):
    async def stream():
        queue = broadcaster.subscribe()
        try:
            while (message := await queue.get()) is not None:
                yield ServerSentEvent(data=message.text, event=message.event)
        finally:
            broadcaster.unsubscribe(queue)

    return EventSourceResponse(stream())


async def send(request):
    body = await request.json()
    broadcaster.broadcast(Message(body["message"], body.get("event")))
    return JSONResponse({"status": "sent", "clients": len(broadcaster.clients)})


async def status(request):
    return JSONResponse({"connected_clients": len(broadcaster.clients)})


app = Starlette(routes=[Route("/events", events), Route("/send", send, methods=["POST"]), Route("/status", status)])
