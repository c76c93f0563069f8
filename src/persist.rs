//! What a snapshot carries of each part of a machine, in one shape (as
//! Firecracker's `Persist`): the vCPU, the virtio-mmio transports, the
//! serial port and the keeper of guest tasks' extended register state each
//! save their state from the paused machine and put it back into a fresh
//! one built the same way (bound to the new job's files). No KVM here: the
//! devices implement it as well as the VMM.

/// A part of a machine whose state a snapshot keeps.
pub trait Persist {
    /// What is saved (serialisable, into the snapshot's machine state).
    type State;
    type Error;
    /// The state of this part, the machine paused.
    fn save(&mut self) -> Result<Self::State, Self::Error>;
    /// Put `state` back into this part, freshly built as the saved one was
    /// and not yet run; on error the part is not to be used.
    fn restore(&mut self, state: &Self::State) -> Result<(), Self::Error>;
}

/// serde for byte strings as hex (compact in JSON, unlike arrays of numbers).
pub mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rootlayer_protocol::hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        rootlayer_protocol::hex::decode(&text).ok_or_else(|| serde::de::Error::custom("not a hex string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[test]
    fn byte_fields_are_hex_in_json() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Bytes(#[serde(with = "hex")] Vec<u8>);
        assert_eq!(serde_json::to_string(&Bytes(vec![0, 0xab])).unwrap(), r#""00ab""#);
        assert_eq!(serde_json::from_str::<Bytes>(r#""00ab""#).unwrap(), Bytes(vec![0, 0xab]));
        assert!(serde_json::from_str::<Bytes>(r#""0g""#).is_err());
    }
}
