# Copies the .proto IN to OUT in the form protoc-c 1.4 accepts and that compiles:
#  - proto3 `optional` labels dropped (protoc-c 1.4 refuses them; the wire format
#    is the same, and the gRPC adapter reads those fields' presence from the raw
#    message itself);
#  - `service` blocks dropped: the adapter dispatches by path and needs no service
#    stubs, and protoc-c would name a stub member after the method `Register`,
#    which lower-cases to the C keyword `register`.
# Reflection uses the descriptor set that protoc builds from the original files.
file(READ ${IN} text)
string(REGEX REPLACE "(\n[ \t]*)optional[ \t]+" "\\1" text "${text}")
string(REGEX REPLACE "\nservice[ \t]+[A-Za-z0-9_]+[ \t]*{[^}]*}" "\n" text "${text}")
file(WRITE ${OUT} "${text}")
