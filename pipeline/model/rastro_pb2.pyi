from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Fix(_message.Message):
    __slots__ = ("device", "fix_time_ms", "server_time_ms", "latitude", "longitude", "speed_kmh", "course", "altitude", "accuracy", "satellites", "valid", "attributes", "protocol", "h3")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FIX_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    SPEED_KMH_FIELD_NUMBER: _ClassVar[int]
    COURSE_FIELD_NUMBER: _ClassVar[int]
    ALTITUDE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SATELLITES_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    H3_FIELD_NUMBER: _ClassVar[int]
    device: str
    fix_time_ms: int
    server_time_ms: int
    latitude: float
    longitude: float
    speed_kmh: float
    course: float
    altitude: float
    accuracy: float
    satellites: int
    valid: bool
    attributes: _containers.ScalarMap[str, str]
    protocol: str
    h3: int
    def __init__(self, device: _Optional[str] = ..., fix_time_ms: _Optional[int] = ..., server_time_ms: _Optional[int] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., speed_kmh: _Optional[float] = ..., course: _Optional[float] = ..., altitude: _Optional[float] = ..., accuracy: _Optional[float] = ..., satellites: _Optional[int] = ..., valid: bool = ..., attributes: _Optional[_Mapping[str, str]] = ..., protocol: _Optional[str] = ..., h3: _Optional[int] = ...) -> None: ...

class FixBatch(_message.Message):
    __slots__ = ("fixes",)
    FIXES_FIELD_NUMBER: _ClassVar[int]
    fixes: _containers.RepeatedCompositeFieldContainer[Fix]
    def __init__(self, fixes: _Optional[_Iterable[_Union[Fix, _Mapping]]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("device", "event_time_ms", "type", "latitude", "longitude", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    device: str
    event_time_ms: int
    type: str
    latitude: float
    longitude: float
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, device: _Optional[str] = ..., event_time_ms: _Optional[int] = ..., type: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...
