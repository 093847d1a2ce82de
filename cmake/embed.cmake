# Turns a text file into a C source defining `const char NAME[]`, so lmc
# carries its templates inside the binary: cmake -DIN=... -DOUT=... -DNAME=...
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE "${OUT}" "/* generated from ${IN} by cmake/embed.cmake */\nconst char ${NAME}[] = {${bytes} 0};\n")
