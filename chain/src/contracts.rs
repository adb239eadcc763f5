//! Bindings of the contracts in `contracts/`, generated from the committed solc output
//! (`contracts/build/*.json`, written by `scripts/build-contracts.sh`).

#![allow(clippy::too_many_arguments)]

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    StakeToken,
    "../contracts/build/StakeToken.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    Staking,
    "../contracts/build/Staking.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    TicketBroker,
    "../contracts/build/TicketBroker.json"
);
