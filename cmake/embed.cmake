# Writes IN as a C byte array into OUT: `const unsigned char VAR[]` (NUL-terminated,
# so text can be used as a string) and `const unsigned long VAR_len` (without the NUL).
# VAR defaults to tms_openapi_json.
if(NOT DEFINED VAR)
  set(VAR tms_openapi_json)
endif()
file(READ ${IN} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUT} "/* generated from ${IN} */\nconst unsigned char ${VAR}[] = {${bytes}0x00};\nconst unsigned long ${VAR}_len = sizeof(${VAR}) - 1;\n")
