# cmake -P build_java.cmake, from client/java/CMakeLists.txt: generates the Java code of PROTO
# (messages and gRPC stub) into WORK_DIR/gen afresh, compiles it with SOURCES into WORK_DIR/classes
# and packs OUTPUT (a jar). Which files protoc writes depends on the proto (one per message), so
# they are globbed here, at build time, rather than listed in CMake.
set(gen ${WORK_DIR}/gen)
set(classes ${WORK_DIR}/classes)
file(REMOVE_RECURSE ${gen} ${classes})
file(MAKE_DIRECTORY ${gen} ${classes})
execute_process(
  COMMAND ${PROTOC} -I ${PROTO_DIR} --java_out=${gen} --grpc-java_out=${gen}
    --plugin=protoc-gen-grpc-java=${PLUGIN} ${PROTO}
  COMMAND_ERROR_IS_FATAL ANY)
file(GLOB_RECURSE generated ${gen}/*.java)
string(REPLACE ";" ":" cp "${CLASSPATH}")
execute_process(
  COMMAND ${JAVAC} --release 17 -encoding UTF-8 -Xlint:all,-serial,-processing,-rawtypes,-unchecked
    -d ${classes} -cp ${cp} ${generated} ${SOURCES}
  COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${JAR_TOOL} --create --file ${OUTPUT} -C ${classes} .
  COMMAND_ERROR_IS_FATAL ANY)
