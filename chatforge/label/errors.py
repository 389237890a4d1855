"""A request the labelling app refuses: an HTTP status, the field at fault and a message naming it."""


class LabelError(Exception):
    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict:
        return {"error": {"message": self.message, "field": self.field}}
