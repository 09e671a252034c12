"""Field-label queries that work on every supported protobuf runtime.

protobuf 7 dropped ``FieldDescriptor.label`` in favour of ``is_repeated`` and
``is_required``; protobuf 5 has only ``label``. Code that asks "is this field
repeated?" goes through here so it runs on both.
"""


def is_repeated(field):
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == field.LABEL_REPEATED


def is_required(field):
    flag = getattr(field, "is_required", None)
    if flag is not None:
        return bool(flag)
    return field.label == field.LABEL_REQUIRED
