# Writes IN as a C byte array (tms_openapi_json, tms_openapi_json_len) into OUT.
file(READ ${IN} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUT} "/* generated from ${IN} */\nconst unsigned char tms_openapi_json[] = {${bytes}0x00};\nconst unsigned long tms_openapi_json_len = sizeof(tms_openapi_json) - 1;\n")
