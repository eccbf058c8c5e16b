from rest_framework.negotiation import DefaultContentNegotiation


class JSONContentNegotiation(DefaultContentNegotiation):
    """Always answer with the first renderer (the JSON envelope).

    Event streams are chosen by the views themselves (``stream: true`` or
    ``Accept: text/event-stream``); every other response, errors included,
    is JSON whatever the ``Accept`` header says, rather than a 406.
    """

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
