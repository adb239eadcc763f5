// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// The token orchestrators bond as stake. A plain ERC-20; the deployer may mint.
contract StakeToken {
    string public constant name = "Castwork Stake";
    string public constant symbol = "CWS";
    uint8 public constant decimals = 18;

    uint256 public totalSupply;
    address public immutable minter;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    constructor() {
        minter = msg.sender;
    }

    function mint(address to, uint256 amount) external {
        require(msg.sender == minter, "only the minter mints");
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    function burn(uint256 amount) external {
        _move(msg.sender, address(0), amount);
        totalSupply -= amount;
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        require(to != address(0), "transfer to the zero address");
        _move(msg.sender, to, amount);
        return true;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        require(to != address(0), "transfer to the zero address");
        uint256 allowed = allowance[from][msg.sender];
        require(allowed >= amount, "allowance too small");
        if (allowed != type(uint256).max) {
            allowance[from][msg.sender] = allowed - amount;
        }
        _move(from, to, amount);
        return true;
    }

    function _move(address from, address to, uint256 amount) private {
        require(balanceOf[from] >= amount, "balance too small");
        balanceOf[from] -= amount;
        if (to != address(0)) {
            balanceOf[to] += amount;
        }
        emit Transfer(from, to, amount);
    }
}
