//! fieldbridge: bridges Modbus RTU/TCP and line-based serial devices to MQTT.
