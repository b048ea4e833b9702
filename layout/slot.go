package layout

import "strings"

// Slot returns the Redis Cluster hash slot of key: CRC16 (XMODEM) of the hash tag (the
// text between the first '{' and the next '}', when not empty) or of the whole key,
// modulo 16384, as the Redis Cluster specification defines it.
func Slot(key string) uint16 {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			key = key[s+1 : s+1+e]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc & 16383
}
